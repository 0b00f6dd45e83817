"""Regenerate data/raw/*.csv: small synthetic Chinese risk-review data for the shipped example configs.

Run: python scripts/make_synthetic_data.py   (deterministic; the files are committed)
"""

import csv
import random
from pathlib import Path

RAW = Path(__file__).resolve().parent.parent / "data" / "raw"

SUBJECTS = ["这笔贷款", "该客户", "这份合同", "本次交易", "这个账户", "该供应商", "此项投资", "这张订单"]
RISK = {
    "低风险": ["信用记录良好", "还款按时", "资料齐全", "流水稳定", "抵押充足"],
    "中风险": ["收入有波动", "资料略有缺失", "近期有一次逾期", "负债率偏高", "经营时间较短"],
    "高风险": ["多次逾期未还", "涉及诉讼纠纷", "资金去向不明", "身份信息存疑", "频繁更换账户"],
}
ADOPT = {
    "采纳": ["建议通过", "同意审批", "可以放款", "批准执行"],
    "不采纳": ["建议驳回", "暂缓处理", "需要补充材料", "不予通过"],
}
CONNECT = ["，", "；", "，经审核", "，综合来看"]


def sentence(rng: random.Random, risk: str, adopt: str) -> str:
    parts = [rng.choice(SUBJECTS), rng.choice(RISK[risk])]
    if rng.random() < 0.5:
        parts.append("，并且" + rng.choice(RISK[risk]))
    parts.append(rng.choice(CONNECT) + rng.choice(ADOPT[adopt]) + "。")
    return "".join(parts)


def main() -> None:
    rng = random.Random(20240522)
    RAW.mkdir(parents=True, exist_ok=True)
    with (RAW / "train_double_label.csv").open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "risk_level", "is_adopt", "risk_score"])
        for _ in range(600):
            risk = rng.choice(list(RISK))
            adopt = "采纳" if (risk == "低风险") ^ (rng.random() < 0.2) else "不采纳"
            score = {"低风险": 0.15, "中风险": 0.5, "高风险": 0.85}[risk] + rng.uniform(-0.14, 0.14)
            writer.writerow([sentence(rng, risk, adopt), risk, adopt, f"{score:.3f}"])
    with (RAW / "train_5w.csv").open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        for _ in range(600):
            risk = rng.choice(list(RISK))
            writer.writerow([sentence(rng, risk, rng.choice(list(ADOPT))), risk])


if __name__ == "__main__":
    main()

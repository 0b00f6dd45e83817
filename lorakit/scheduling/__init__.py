"""Running many experiments over a GPU pool: device inventory, memory estimates, a persistent job queue,
placement, priorities with preemption, and the scheduler loop that ties them together.

Nothing here imports torch at module import; only the memory estimator does, inside its functions.
"""

"""The worker's pure core: the simulated GPU, admission and scheduling, status and response shapes.

Nothing here imports nats, fastapi or sqlalchemy, reads the clock or draws random numbers of
its own: time and randomness come in as arguments.
"""

"""The router's pure core: who may take a request (filter), who should (a policy), and the state
around that (circuit breakers, the priority queue, embedding batches). No I/O, no clock of its own."""

"""The gradient baselines forward-only tuning is measured against, and the cost comparison:

    gradient.py   GradientModel: the transformer's training forward (models.transformer with a
                  tape) and its backward through every layer (nn.backward)
    optim.py      SGD and Adam on plaintext or shared parameters
    training.py   Trainer: full fine-tuning and gradient prompt tuning, in plaintext or under
                  MPC (`secptune train`)
    heap.py       freed weight-sized buffers given back to the system (full fine-tuning)
    compare.py    one iteration of each method under MPC, side by side (`secptune compare`)

Above `tuning/` (forward-only tuning never imports this package)."""

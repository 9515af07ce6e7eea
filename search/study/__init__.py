"""One flow for every study, grid or adaptive, real or simulated, with or without an LR sweep.

    session    the study: resolved spec, tracking store, study run, dataset, model family;
               created once (`new_session`) and loaded once (`open_session`) from the one
               signed copy of the resolved spec in MLflow
    proposers  what to train next, without Ray (`search.proposal.Proposer`): the grid
               (centred on the prior) or the allocator, behind an LR sweep when the spec asks
               for one, never re-dispatching a finished trial
    tune_searcher  the one adapter that serves a proposer to Ray Tune
    backend    how a trial runs: a Tune function trainable building a Ray Train `TorchTrainer`
               (real) or reporting a parametric surface (simulated); Ray start-up and concurrency
    execute    the one place a Tuner is built, fresh or by `Tuner.restore`, and run: the
               storage-full stop, Ctrl-C and SIGTERM, one study at a time
    finish     decisions, laws, the outcome

`search.driver` strings these together for `run`, `resume` and `refine`; `search.plan` runs the
same proposers on a virtual clock.
"""

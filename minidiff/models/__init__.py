"""Score networks: each module is an ``init(rng, ...) -> params``, ``apply(params, ...)`` pair."""

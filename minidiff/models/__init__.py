"""Score networks: each module is an ``init(rng, ...) -> params`` and ``apply(params, ...)`` pair."""

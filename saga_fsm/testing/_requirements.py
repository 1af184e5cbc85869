"""saga_fsm.testing runs on hypothesis, which the ``testing`` extra installs."""

try:
    import hypothesis
except ImportError as missing:  # pragma: no cover - depends on the environment
    raise ImportError(
        "saga_fsm.testing needs hypothesis: pip install 'saga-fsm[testing]'"
    ) from missing

del hypothesis

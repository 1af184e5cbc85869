"""saga_fsm.testing runs on hypothesis, which only the ``test`` extra installs."""

try:
    import hypothesis
except ImportError as missing:  # pragma: no cover - depends on the environment
    raise ImportError(
        "saga_fsm.testing needs hypothesis: pip install 'saga-fsm[test]'"
    ) from missing

del hypothesis

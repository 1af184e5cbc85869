"""saga_fsm: sagas as explicit state machines."""

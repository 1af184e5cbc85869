"""Example sagas, importable by reference (``saga_fsm.examples.order_fulfillment``).

``order_remote`` is the order saga with inventory, payment and shipping as remote
steps, answered by the participant in ``order_services``."""

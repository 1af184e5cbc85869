"""Example sagas, importable by reference (``saga_fsm.examples.order_fulfillment``)."""

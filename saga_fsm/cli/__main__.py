from saga_fsm.cli import main

main(prog_name="saga-fsm")

from lexforge.plan.cli import main

main()

from automodel.cli import main

main()

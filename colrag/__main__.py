from colrag.cli import main

main()

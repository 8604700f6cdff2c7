from bbx.cli import main

main()

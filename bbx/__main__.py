from bbx.startup import main

main()

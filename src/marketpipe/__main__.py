from marketpipe.cli import main

main()

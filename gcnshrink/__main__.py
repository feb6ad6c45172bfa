from gcnshrink.cli import main

main()

from chunkfs.cli import main

main()

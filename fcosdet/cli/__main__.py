from fcosdet.cli.main import main

main()

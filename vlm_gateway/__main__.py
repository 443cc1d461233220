from vlm_gateway.cli.main import main

main()

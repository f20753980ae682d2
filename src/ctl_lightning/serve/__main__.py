from ctl_lightning.serve.cli import main

main()

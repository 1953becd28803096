import CLI
Fathom.runMain()

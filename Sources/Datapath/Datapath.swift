// Datapath

"""What training writes and everything else reads: the run contract, the weights-file format and the run folder."""

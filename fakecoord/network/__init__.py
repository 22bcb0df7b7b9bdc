"""The burn_p2p network as the coordinator side models it (rounds, groups, transfer)."""

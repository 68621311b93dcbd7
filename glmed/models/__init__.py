"""The networks: ResNet/FPN branches, GLNet with its sharing modes, losses."""

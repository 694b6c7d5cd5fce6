"""The toy world (procedural shapes, styles and captions) that the Conduit toy model is trained on."""

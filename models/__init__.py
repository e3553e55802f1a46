"""avtime models: encoders, heads, losses and the feature queue. Pure torch; never imports ray."""

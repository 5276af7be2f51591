"""Device mesh and sharding: logical axis names mapped to mesh axes by named rule presets."""

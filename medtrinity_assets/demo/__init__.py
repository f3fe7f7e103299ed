"""The embedded demo: stage real medical images that ship in installed packages into data/demo/."""

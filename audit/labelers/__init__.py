"""Independent attribute classifiers (one file per backend), behind one interface."""

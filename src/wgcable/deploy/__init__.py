"""Deploying to clusters: the broker's set-up (`wgcable broker`), a cluster's manifests
(`wgcable join`) and their removal (`wgcable join --uninstall`)."""

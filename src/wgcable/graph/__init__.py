"""`wgcable graph`: a picture of the cluster set (clusters, gateways, cables), as GraphViz.

``model.py`` turns Gateway statuses into what is drawn (pure), ``dot.py`` renders it as DOT
(pure; every broker-supplied string escaped), ``graphviz.py`` runs Graphviz's ``dot`` for
SVG and PNG, ``sources.py`` reads the statuses from a store or a lab.
"""

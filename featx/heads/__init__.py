"""Heads: the registry of named scikit-learn pipelines (:mod:`.registry`), the torch solvers
(:mod:`.solvers`), saving and loading fitted heads with their cards (:mod:`.persist`) and folding a
linear head into one deployable module (:mod:`.export`)."""

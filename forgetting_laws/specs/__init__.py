"""The built-in sweep specs, shipped with the package: ``forgetting-laws sweep demo`` runs
``demo.toml`` from any directory (``forgetting-laws specs`` lists them)."""

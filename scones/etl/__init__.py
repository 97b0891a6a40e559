"""CIFAR-100 ETL: extract (archive), synthesise (synthetic), transform, load; CLI in __main__."""

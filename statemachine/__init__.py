"""The workflow's Step Functions state machine: its ASL definition and placeholder substitution."""

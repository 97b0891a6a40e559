"""The embedded local AWS emulator (moto + a real Lambda runtime + Step Functions execution)."""

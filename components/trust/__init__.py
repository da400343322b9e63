"""The publisher's side of The Update Framework: the stack's store is a TUF repository (repository.py) written with
python-tuf's metadata API, signed by edgefleet's signers through securesystemslib's `Signer` (signer.py), in any
store that can read and write named objects (storage.py: a directory here; S3 and Azure blob in each platform's
trust_store.py). The device's side is the agent's: edgefleet_agent/trust.py, and the contract both read,
edgefleet_agent/contract/tuf.py. docs/signing.md has the design."""

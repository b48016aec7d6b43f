"""Callbacks for training frameworks: `lightning.DynascopeCallback` (Lightning's Trainer) and
`transformers.DynascopeCallback` (Hugging Face's Trainer). Each imports its framework only when used."""

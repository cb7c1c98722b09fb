"""Release tooling: export a trained model with its card, choose each rate point's λ, record Kodak numbers, fine-tune the synthesis."""

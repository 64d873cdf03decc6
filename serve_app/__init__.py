"""Ray Serve applications of AIGQ (paper §4): direct (nearline u2q cache), think (daily x2q index), hintq."""

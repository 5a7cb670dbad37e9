"""Operations: metrics, logging and systemd notification."""

"""`connvo-agent load`: many simulated participants with real signalling, ICE, DTLS and SRTP."""

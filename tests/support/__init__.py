"""What the tests share: images they make (imagegen), featx run and killed in a child
process (crash), the hostile-input corpus (hostile), a local HTTP server (httpserver)."""

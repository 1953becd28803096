// AgentAPI

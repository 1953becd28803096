// A test PKI for the TLS tests: a CA, a server certificate for 127.0.0.1/localhost and a
// client certificate, all signed by the CA, valid for 100 years. Test-only keys for
// loopback. Made with openssl 3.0 (prime256v1):
//   openssl req -x509 -new -key ca.key -days 36500 -subj /CN=fathom-test-ca \
//     -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
//   openssl x509 -req -CA ca.crt -CAkey ca.key -days 36500 \
//     -extfile <(echo subjectAltName=IP:127.0.0.1,DNS:localhost; echo extendedKeyUsage=serverAuth)
//   (client: CN=system:serviceaccount:kube-system:fathom-agent, extendedKeyUsage=clientAuth)
//   keys as PKCS#8 (openssl pkcs8 -topk8 -nocrypt)

enum TestPKI {
    static let ca = """
        -----BEGIN CERTIFICATE-----
        MIIBmjCCAT+gAwIBAgIUHgASCPPtIN0zg8NeIg4R7xlRVyswCgYIKoZIzj0EAwIw
        GTEXMBUGA1UEAwwOZmF0aG9tLXRlc3QtY2EwIBcNMjYxMTI2MDA1ODQyWhgPMjEy
        NjExMDIwMDU4NDJaMBkxFzAVBgNVBAMMDmZhdGhvbS10ZXN0LWNhMFkwEwYHKoZI
        zj0CAQYIKoZIzj0DAQcDQgAEYaPyLeEIpY5vKtACD9FILKBaOLC8oSaL/mCJV0ox
        jxHv6OVpg1SfM70IWkL+W6ZO1V2SwjCOMMMZRJ0NQefz4aNjMGEwHQYDVR0OBBYE
        FLHz73GU9Y+KjqQbXuQUhXqvUYMCMB8GA1UdIwQYMBaAFLHz73GU9Y+KjqQbXuQU
        hXqvUYMCMA8GA1UdEwEB/wQFMAMBAf8wDgYDVR0PAQH/BAQDAgEGMAoGCCqGSM49
        BAMCA0kAMEYCIQCeIg8ZXlq0964edqnEHIaUiTPf0VIyx+v0c6b5esxIWQIhAI0A
        Foh21HpKYQzC0THFQ3FwF0uPKdkgK25raXSIHt8k
        -----END CERTIFICATE-----
        """

    static let serverCertificate = """
        -----BEGIN CERTIFICATE-----
        MIIBtDCCAVqgAwIBAgIUVYCBbS+j2UX+tBhDLWaEBdnqs8EwCgYIKoZIzj0EAwIw
        GTEXMBUGA1UEAwwOZmF0aG9tLXRlc3QtY2EwIBcNMjYxMTI2MDA1ODQzWhgPMjEy
        NjExMDIwMDU4NDNaMBkxFzAVBgNVBAMMDmt1YmUtYXBpc2VydmVyMFkwEwYHKoZI
        zj0CAQYIKoZIzj0DAQcDQgAEAgYssYR18lvlw69Q8Kt1ceRuoNcpvqe6KGQ3qMcF
        4pBjllbmJGiQ2Q1YBYsKH/HM228zfXCN81zxgl9PlDrsJKN+MHwwGgYDVR0RBBMw
        EYcEfwAAAYIJbG9jYWxob3N0MBMGA1UdJQQMMAoGCCsGAQUFBwMBMAkGA1UdEwQC
        MAAwHQYDVR0OBBYEFIEgVf5rsu8fdKNwGghzQ51gyKOpMB8GA1UdIwQYMBaAFLHz
        73GU9Y+KjqQbXuQUhXqvUYMCMAoGCCqGSM49BAMCA0gAMEUCIESRSdgyZ2kk2mVi
        vCuqisLM36jVMW0/nHbaZfjN11RVAiEAxqvvSCJqiw1Hsh0f2Mo5Wxvp90OgWQL+
        S8BbJy+DtzU=
        -----END CERTIFICATE-----
        """

    static let serverKey = """
        -----BEGIN PRIVATE KEY-----
        MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgTjREnNlGxC80lOWI
        pZv8j1+f1g5w4PYfMsQnIuLypJChRANCAAQCBiyxhHXyW+XDr1Dwq3Vx5G6g1ym+
        p7ooZDeoxwXikGOWVuYkaJDZDVgFiwof8czbbzN9cI3zXPGCX0+UOuwk
        -----END PRIVATE KEY-----
        """

    static let clientCertificate = """
        -----BEGIN CERTIFICATE-----
        MIIBuDCCAV6gAwIBAgIUVYCBbS+j2UX+tBhDLWaEBdnqs8IwCgYIKoZIzj0EAwIw
        GTEXMBUGA1UEAwwOZmF0aG9tLXRlc3QtY2EwIBcNMjYxMTI2MDA1ODQzWhgPMjEy
        NjExMDIwMDU4NDNaMDkxNzA1BgNVBAMMLnN5c3RlbTpzZXJ2aWNlYWNjb3VudDpr
        dWJlLXN5c3RlbTpmYXRob20tYWdlbnQwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNC
        AARcFDc+nGCQ4DRLzn6ZsabboG94eIuTvyxKeQJJsMxzGt5CxWcKV8YjpinoYmXa
        2dG8qwj0dGmlyBxUhXxrPMUGo2IwYDATBgNVHSUEDDAKBggrBgEFBQcDAjAJBgNV
        HRMEAjAAMB0GA1UdDgQWBBTjX/VQfOzljJZ8w9sJuPLFHg7uQjAfBgNVHSMEGDAW
        gBSx8+9xlPWPio6kG17kFIV6r1GDAjAKBggqhkjOPQQDAgNIADBFAiAx4seHyN8W
        x7Ig8XeqlKLVg5bJB6AvRL1+dhzW54JBAQIhAPeuVbkDXgYo02ABttTyIVM6wS2s
        19Owcqnu79IwXLp/
        -----END CERTIFICATE-----
        """

    static let clientKey = """
        -----BEGIN PRIVATE KEY-----
        MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgy3io/7L+QJCpDlsE
        lcM2ZXeQFgvErXtK9O2UfaE/vf2hRANCAARcFDc+nGCQ4DRLzn6ZsabboG94eIuT
        vyxKeQJJsMxzGt5CxWcKV8YjpinoYmXa2dG8qwj0dGmlyBxUhXxrPMUG
        -----END PRIVATE KEY-----
        """
}

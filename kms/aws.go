package kms

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

// KMSClient is the part of the AWS KMS API mailgate uses. *kms.Client from aws-sdk-go-v2 satisfies
// it; declaring it here keeps the dependency narrow and lets the Resolver take any implementation.
type KMSClient interface {
	Encrypt(ctx context.Context, in *awskms.EncryptInput, optFns ...func(*awskms.Options)) (*awskms.EncryptOutput, error)
	Decrypt(ctx context.Context, in *awskms.DecryptInput, optFns ...func(*awskms.Options)) (*awskms.DecryptOutput, error)
}

// AWSOptions says how to reach AWS KMS. Credentials come from the AWS default chain (environment,
// shared files, SSO, container or instance role).
type AWSOptions struct {
	// Region, e.g. "eu-west-2"; empty = AWS_REGION / the shared config.
	Region string
	// Endpoint overrides the KMS endpoint (a VPC endpoint, local-kms in tests), e.g.
	// "http://127.0.0.1:4599". Setting it also disables EC2 instance metadata lookups.
	Endpoint string
	// DisableIMDS turns off EC2 instance metadata (region and credentials): off EC2 each lookup stalls
	// about 5 s before the chain gives up.
	DisableIMDS bool
}

// NewAWSClient builds a KMS client from the AWS default configuration. The SDK's default retries
// (3 attempts) stay: decryption happens at load time, where a short retry is welcome.
func NewAWSClient(ctx context.Context, o AWSOptions) (*awskms.Client, error) {
	var opts []func(*config.LoadOptions) error
	if o.Region != "" {
		opts = append(opts, config.WithRegion(o.Region))
	}
	if o.DisableIMDS || o.Endpoint != "" {
		opts = append(opts, config.WithEC2IMDSClientEnableState(imds.ClientDisabled))
	}
	cfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("kms: loading AWS configuration: %w", err)
	}
	if cfg.Region == "" {
		return nil, errors.New("kms: no AWS region: set the KMS region in the configuration or AWS_REGION")
	}
	return awskms.NewFromConfig(cfg, func(ko *awskms.Options) {
		if o.Endpoint != "" {
			ko.BaseEndpoint = &o.Endpoint
		}
	}), nil
}

// encryptionContext is what KMS binds a mailgate ciphertext to: the application and the secret's
// name. It is rebuilt on Decrypt from the name carried in the envelope; KMS refuses any difference.
func encryptionContext(name string) map[string]string {
	ec := map[string]string{"service": "mailgate"}
	if name != "" {
		ec["secret"] = name
	}
	return ec
}

// endpointOf describes where a client sends requests, for error messages.
func endpointOf(c KMSClient) string {
	oc, ok := c.(interface{ Options() awskms.Options })
	if !ok {
		return "(custom client)"
	}
	o := oc.Options()
	if o.BaseEndpoint != nil && *o.BaseEndpoint != "" {
		return *o.BaseEndpoint
	}
	if o.Region != "" {
		return "https://kms." + o.Region + ".amazonaws.com"
	}
	return "(AWS default)"
}

// describeKMSError turns an SDK error into operator advice. It never includes request content: SDK
// errors carry the operation, status, request id and the service's message, not the payload.
func describeKMSError(c KMSClient, err error) error {
	var send *smithyhttp.RequestSendError
	var netErr net.Error
	switch {
	case errors.As(err, &send), errors.As(err, &netErr), errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("KMS endpoint %s unreachable: %w", endpointOf(c), err)
	}
	var badCT *types.InvalidCiphertextException
	if errors.As(err, &badCT) {
		return fmt.Errorf("KMS refused the ciphertext (encryption context mismatch, edited reference, "+
			"or a key this account cannot use): %w", err)
	}
	var api smithy.APIError
	if errors.As(err, &api) {
		return fmt.Errorf("KMS at %s refused: %s: %w", endpointOf(c), api.ErrorCode(), err)
	}
	return err
}

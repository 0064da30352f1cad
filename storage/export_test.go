package storage

import (
	"context"
	"log/slog"
	"testing"

	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// Exports for the tests of package storage_test, which can import
// internal/s3test (it imports storage).

// RunStoreConformance runs the Store conformance suite.
func RunStoreConformance(t *testing.T, s Store) { testStore(t, s) }

// NewS3WithOptions is NewS3 with options for the S3 client.
func NewS3WithOptions(ctx context.Context, cfg S3Config, logger *slog.Logger, optFns ...func(*s3.Options)) (*S3, error) {
	return newS3(ctx, cfg, logger, optFns...)
}

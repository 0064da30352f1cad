package s3test

import (
	"io"
	"os"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestStart(t *testing.T) {
	srv := Start(t)
	require.True(t, strings.HasPrefix(srv.Endpoint, "http://127.0.0.1:"), srv.Endpoint)
	fi, err := os.Stat(Binary(t))
	require.NoError(t, err)
	require.True(t, fi.Mode().IsRegular())

	client := srv.Client(t)
	_, err = client.PutObject(t.Context(), &s3.PutObjectInput{
		Bucket: aws.String(srv.Bucket), Key: aws.String("a/b"), Body: strings.NewReader("hello"),
	})
	require.NoError(t, err)
	out, err := client.GetObject(t.Context(), &s3.GetObjectInput{Bucket: aws.String(srv.Bucket), Key: aws.String("a/b")})
	require.NoError(t, err)
	b, err := io.ReadAll(out.Body)
	require.NoError(t, err)
	require.NoError(t, out.Body.Close())
	require.Equal(t, "hello", string(b))
	_, err = os.Stat(srv.Dir + "/" + srv.Bucket + "/a/b")
	require.NoError(t, err, "posix backend: objects are files")

	cfg := srv.S3Config("p")
	require.Equal(t, srv.Bucket, cfg.Bucket)
	require.Equal(t, "p", cfg.Prefix)
	require.True(t, cfg.PathStyle)

	t.Run("checks signatures", func(t *testing.T) {
		wrong := newClient(t, srv.Endpoint, srv.Region, srv.AccessKey, srv.SecretKey+"x")
		_, err := wrong.HeadObject(t.Context(), &s3.HeadObjectInput{Bucket: aws.String(srv.Bucket), Key: aws.String("a/b")})
		require.ErrorContains(t, err, "403")
	})
	t.Run("servers are independent", func(t *testing.T) {
		other := Start(t)
		require.NotEqual(t, srv.Endpoint, other.Endpoint)
		_, err := other.Client(t).HeadObject(t.Context(), &s3.HeadObjectInput{Bucket: aws.String(other.Bucket), Key: aws.String("a/b")})
		require.ErrorContains(t, err, "404")
	})
}

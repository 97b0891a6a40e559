import base64
import os

import boto3

# Fill this in with the name of your deployed model
ENDPOINT = os.environ["ENDPOINT"]

runtime = boto3.client("runtime.sagemaker")


def lambda_handler(event, context):
    # Decode the image data
    image = base64.b64decode(event["image_data"])

    # Make a prediction
    response = runtime.invoke_endpoint(EndpointName=ENDPOINT, ContentType="image/png", Body=image)

    # We return the data back to the Step Function
    event["inferences"] = response["Body"].read().decode("utf-8")
    return {"statusCode": 200, "body": event}
